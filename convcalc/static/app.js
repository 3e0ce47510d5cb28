// convcalc's playground page: plain JS over the server's /api endpoints and the
// CodeMirror bundle (editor.js, window.ConvcalcEditor). Nothing is fetched from elsewhere.
"use strict";

(() => {
  const DEBOUNCE_MS = 300;
  const POLL_MS = 1500;
  const $ = (id) => document.getElementById(id);

  const state = {
    file: null, // {path, mtime_ns} when the server was given a file
    savedText: null, // the text last loaded from or saved to that file
    lastReport: null,
    selectedPath: null,
    generation: 0, // counts analyses started, so late answers are dropped
    compare: false,
    editorB: null,
  };

  // ------------------------------------------------------------ helpers

  async function api(method, url, body) {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(url, init);
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      return body.message || body.detail || `${response.status} ${response.statusText}`;
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  function setStatus(stateName, text) {
    const status = $("status");
    status.dataset.state = stateName;
    status.textContent = text;
  }

  const number = (value) => (value === null || value === undefined ? "--" : value.toLocaleString("en-US"));
  const shape = (value) => (value ? `[${value.join(", ")}]` : "");

  function bytes(value) {
    if (value === null || value === undefined) return "--";
    if (value < 1e6) return `${(value / 1e3).toFixed(2)} KB`;
    if (value < 1e9) return `${(value / 1e6).toFixed(2)} MB`;
    return `${(value / 1e9).toFixed(2)} GB`;
  }

  function scaled(value, unit) {
    const steps = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "K"]];
    for (const [size, prefix] of steps) {
      if (value >= size) return `${(value / size).toFixed(2)} ${prefix}${unit}`;
    }
    return `${value} ${unit}`;
  }

  function receptiveField(field) {
    if (!field || !field.size) return "--";
    return `${field.size.join("×")} (stride ${field.stride.join("×")})`.replace(
      /^(\d+)×\1 \(stride (\d+)×\2\)$/,
      "$1×$1 (stride $2)",
    );
  }

  function element(tag, attributes = {}, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function specName(text) {
    const match = /^name:\s*["']?([\w.-]+)/m.exec(text);
    return match ? match[1] : "spec";
  }

  function download(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = element("a", { href: url, download: filename });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // base64url of the UTF-8 text, for the share link's #spec= fragment
  function encodeSpec(text) {
    let binary = "";
    for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function decodeSpec(encoded) {
    const base64 = encoded.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "===".slice((base64.length + 3) % 4));
    return new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
  }

  function specFromFragment() {
    const match = /^#spec=([A-Za-z0-9_-]*)$/.exec(location.hash);
    if (!match) return null;
    try {
      return decodeSpec(match[1]);
    } catch {
      setStatus("error", "The link's #spec= fragment is not valid base64url UTF-8.");
      return null;
    }
  }

  // ------------------------------------------------------------ analysis

  function debounce(run, delay) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(run, delay);
    };
  }

  async function analyze() {
    const generation = ++state.generation;
    const text = editor.getDoc();
    const results = $("results");
    results.dataset.state = "busy";
    setStatus("busy", "analysing…");
    let response;
    try {
      response = await api("POST", "/api/analyze", { spec: text, explain: true });
    } catch (error) {
      if (generation !== state.generation) return;
      showFailure(`The server did not answer: ${error.message}`, []);
      return;
    }
    if (generation !== state.generation) return;
    if (response.ok) {
      const body = await response.json();
      if (generation !== state.generation) return;
      showResult(body);
    } else if (response.status === 422) {
      const body = await response.json();
      if (generation !== state.generation) return;
      showFailure(body.message, body.errors || []);
    } else {
      const message = await errorMessage(response);
      if (generation !== state.generation) return;
      showFailure(message, []);
    }
    results.dataset.generation = String(generation);
  }

  function showFailure(message, errors) {
    editor.setDiagnostics(
      errors.length
        ? errors.map((error) => ({ line: error.line, message: error.message }))
        : [{ line: null, message }],
    );
    const banner = $("error-banner");
    banner.replaceChildren();
    const headline = errors.length > 1 ? `${errors.length} errors in the spec` : message;
    banner.append(element("div", { class: "headline", "data-test": "error-message" }, headline));
    for (const error of errors.length > 1 ? errors : []) {
      const where = [error.line ? `line ${error.line}` : null, error.path].filter(Boolean).join(", ");
      banner.append(element("div", { class: "detail" }, `${where ? where + ": " : ""}${error.message}`));
    }
    banner.hidden = false;
    $("result").classList.toggle("stale", state.lastReport !== null);
    $("results").dataset.state = "error";
    setStatus("error", "error");
  }

  function showResult(body) {
    editor.setDiagnostics([]);
    $("error-banner").hidden = true;
    $("result").classList.remove("stale");
    $("results").dataset.state = "ok";
    setStatus("ok", "ok");
    const report = body.report;
    state.lastReport = report;
    renderSummary(report);
    renderTotals(report.totals);
    renderWarnings(body.warnings || report.warnings || []);
    renderTable(report.layers);
    renderPicture(body.svg, body.picture_error);
  }

  function renderSummary(report) {
    $("summary").textContent =
      `${report.name}: input ${shape(report.input_shape)}, ${report.dtype} → output ${shape(report.output_shape)}`;
  }

  function renderTotals(totals) {
    const rows = [
      ["Total params", number(totals.params), "params"],
      ["Trainable params", number(totals.trainable_params), "trainable_params"],
      ["Non-trainable params", number(totals.non_trainable_params), "non_trainable_params"],
      ["Buffer elements", number(totals.buffers), "buffers"],
      ["MACs", `${number(totals.macs)} (${scaled(totals.macs, "MACs")}, ${scaled(totals.flops, "FLOPs")})`, "macs"],
      ["Input size", bytes(totals.input_bytes), "input_bytes"],
      ["Params size", bytes(totals.param_bytes), "param_bytes"],
      [
        "Activations size",
        `${bytes(totals.activation_bytes)}` +
          (totals.largest_activation_path
            ? ` (largest: ${totals.largest_activation_path}, ${bytes(totals.largest_activation_bytes)})`
            : ""),
        "activation_bytes",
      ],
    ];
    const list = $("totals");
    list.replaceChildren();
    for (const [label, value, key] of rows) {
      const item = element("div", { "data-total": key });
      item.append(element("dt", {}, label), element("dd", {}, value));
      list.append(item);
    }
  }

  function renderWarnings(warnings) {
    const list = $("warnings");
    list.replaceChildren();
    for (const warning of warnings) {
      const text = typeof warning === "string" ? warning : `${warning.path ? warning.path + ": " : ""}${warning.message}`;
      list.append(element("li", { "data-test": "warning" }, text));
    }
    list.hidden = warnings.length === 0;
  }

  function layerLabel(layer) {
    return layer.name ? `${layer.path} (${layer.name})` : layer.path;
  }

  function renderTable(layers) {
    const body = $("layers-body");
    body.replaceChildren();
    let selectedStill = false;
    for (const layer of layers) {
      const row = element("tr", {
        "data-test": "layer-row",
        "data-path": layer.path,
        class: layer.is_block ? "block" : "",
      });
      const cells = [
        ["path", layerLabel(layer)],
        ["type", layer.type],
        ["output_shape", shape(layer.output_shape)],
        ["arguments", layer.arguments || ""],
        ["params", layer.params ? number(layer.params) : "--"],
        ["macs", layer.macs ? number(layer.macs) : "--"],
        ["receptive_field", receptiveField(layer.receptive_field)],
      ];
      for (const [column, text] of cells) {
        const cell = element("td", { "data-col": column }, text);
        if (column === "params" || column === "macs") cell.className = "num";
        if (column === "path") cell.style.paddingLeft = `${0.5 + (layer.depth - 1) * 1.2}em`;
        row.append(cell);
      }
      row.addEventListener("click", () => selectLayer(layer.path));
      if (layer.path === state.selectedPath) {
        row.classList.add("selected");
        selectedStill = true;
      }
      body.append(row);
    }
    showExplanation(selectedStill ? state.selectedPath : null);
  }

  function selectLayer(path) {
    state.selectedPath = path;
    for (const row of $("layers-body").rows) row.classList.toggle("selected", row.dataset.path === path);
    showExplanation(path);
  }

  function showExplanation(path) {
    const layer = path && state.lastReport && state.lastReport.layers.find((item) => item.path === path);
    const title = $("explanation-title");
    const lines = $("explanation-lines");
    if (!layer) {
      title.textContent = "Formulas";
      lines.textContent = "Click a row to see its formulas with the numbers substituted.";
      lines.dataset.path = "";
      return;
    }
    title.textContent = `Formulas: ${layerLabel(layer)} ${layer.type}`;
    lines.dataset.path = layer.path;
    lines.textContent = layer.explanation && layer.explanation.length
      ? layer.explanation.join("\n")
      : "No formulas for this layer (its output has the input's shape, and it has no parameters).";
  }

  let pictureUrl = null;
  function renderPicture(svg, pictureError) {
    const picture = $("picture");
    picture.replaceChildren();
    if (pictureUrl) URL.revokeObjectURL(pictureUrl);
    pictureUrl = null;
    if (svg) {
      // an <img> so that nothing in the SVG (names from a shared spec) can run script
      pictureUrl = URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" }));
      picture.append(element("img", { src: pictureUrl, alt: "network picture", "data-test": "picture-svg" }));
    } else if (pictureError) {
      picture.append(element("p", { class: "picture-error", "data-test": "picture-error" }, pictureError));
    }
  }

  // ------------------------------------------------------------ file, save, poll

  function isDirty() {
    return state.file !== null && editor.getDoc() !== state.savedText;
  }

  function updateFileLabel() {
    if (!state.file) return;
    const label = $("file-path");
    label.textContent = (isDirty() ? "● " : "") + state.file.path;
    label.dataset.dirty = String(isDirty());
    $("save").disabled = !isDirty();
  }

  async function loadServedFile() {
    let response;
    try {
      response = await api("GET", "/api/file");
    } catch {
      return null;
    }
    if (!response.ok) return null;
    return response.json();
  }

  async function save() {
    if (!state.file) return;
    const text = editor.getDoc();
    setStatus("busy", "saving…");
    let response;
    try {
      response = await api("PUT", "/api/file", { text });
    } catch (error) {
      setStatus("error", `not saved: ${error.message}`);
      return;
    }
    if (!response.ok) {
      setStatus("error", `not saved: ${await errorMessage(response)}`);
      return;
    }
    const body = await response.json();
    state.file.mtime_ns = body.mtime_ns;
    state.savedText = text;
    updateFileLabel();
    setStatus("ok", `saved ${state.file.path}`);
  }

  function showNotice(text, canReload) {
    $("file-notice-text").textContent = text;
    $("reload-file").hidden = !canReload;
    $("file-notice").hidden = false;
  }

  async function poll() {
    if (!state.file) return;
    let response;
    try {
      response = await api("GET", "/api/file");
    } catch {
      return; // the server is away for a moment; try again next time
    }
    if (!response.ok) {
      showNotice(`${state.file.path} cannot be read: ${await errorMessage(response)}`, false);
      return;
    }
    const body = await response.json();
    if (body.mtime_ns === state.file.mtime_ns) return;
    if (!isDirty()) {
      state.file.mtime_ns = body.mtime_ns;
      state.savedText = body.text;
      if (editor.getDoc() !== body.text) editor.setDoc(body.text);
      $("file-notice").hidden = true;
      updateFileLabel();
    } else if (state.pendingDisk === undefined || state.pendingDisk.mtime_ns !== body.mtime_ns) {
      state.pendingDisk = body;
      showNotice(`${state.file.path} changed on disk; your unsaved edits are kept.`, true);
    }
  }

  function reloadFromDisk() {
    const body = state.pendingDisk;
    if (!body) return;
    state.file.mtime_ns = body.mtime_ns;
    state.savedText = body.text;
    state.pendingDisk = undefined;
    editor.setDoc(body.text);
    $("file-notice").hidden = true;
    updateFileLabel();
  }

  // ------------------------------------------------------------ examples, open, export, share

  async function loadExamples() {
    let examples = [];
    try {
      const response = await api("GET", "/api/examples");
      if (response.ok) examples = await response.json();
    } catch {
      // no examples menu without the server
    }
    for (const select of [$("examples"), $("examples-b")]) {
      for (const example of examples) {
        select.append(element("option", { value: example.name }, example.title || example.name));
      }
    }
    return examples;
  }

  async function fetchExample(name) {
    const response = await api("GET", `/api/examples/${encodeURIComponent(name)}`);
    if (!response.ok) throw new Error(await errorMessage(response));
    return response.text();
  }

  async function openExample(select, target) {
    const name = select.value;
    select.value = "";
    if (!name) return;
    if (target === editor && isDirty() && !confirm("Replace your unsaved edits with the example?")) return;
    try {
      target.setDoc(await fetchExample(name));
    } catch (error) {
      setStatus("error", `example ${name}: ${error.message}`);
    }
  }

  async function openFile(file) {
    if (!file) return;
    if (isDirty() && !confirm(`Replace your unsaved edits with ${file.name}?`)) return;
    editor.setDoc(await file.text());
    setStatus("ok", `opened ${file.name}`);
  }

  async function exportAs(format) {
    const text = editor.getDoc();
    const name = state.file ? state.file.path.split(/[\\/]/).pop().replace(/\.\w+$/, "") : specName(text);
    if (format === "spec") {
      download(new Blob([text], { type: "application/yaml" }), `${name}.yaml`);
      return;
    }
    let response;
    try {
      response = await api("POST", "/api/export", { spec: text, format });
    } catch (error) {
      setStatus("error", `export failed: ${error.message}`);
      return;
    }
    if (!response.ok) {
      setStatus("error", `export failed: ${await errorMessage(response)}`);
      return;
    }
    const extension = { json: "json", csv: "csv", markdown: "md", pytorch: "py", svg: "svg" }[format];
    const disposition = response.headers.get("Content-Disposition") || "";
    const given = /filename="?([^";]+)"?/.exec(disposition);
    download(await response.blob(), given ? given[1] : `${name}.${extension}`);
  }

  function share() {
    const url = `${location.origin}${location.pathname}#spec=${encodeSpec(editor.getDoc())}`;
    const input = $("share-url");
    input.value = url;
    $("share-box").hidden = false;
    input.select();
    if (navigator.clipboard) navigator.clipboard.writeText(url).catch(() => {});
  }

  // ------------------------------------------------------------ compare

  async function runCompare() {
    if (!state.compare) return;
    const generation = (state.compareGeneration = (state.compareGeneration || 0) + 1);
    const depthText = $("compare-depth").value.trim();
    const body = { a: editor.getDoc(), b: state.editorB.getDoc(), depth: depthText ? Number(depthText) : null };
    let response;
    try {
      response = await api("POST", "/api/compare", body);
    } catch (error) {
      showCompareError(`The server did not answer: ${error.message}`);
      return;
    }
    if (generation !== state.compareGeneration) return;
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      let side = null;
      let errors = [];
      try {
        const failure = await response.json();
        message = failure.message || message;
        side = failure.side || null;
        errors = failure.errors || [];
      } catch {
        // not JSON: the status line says enough
      }
      if (generation !== state.compareGeneration) return;
      const diagnostics = errors.length ? errors : [{ line: null, message }];
      editor.setDiagnostics(side === "a" ? diagnostics : []);
      state.editorB.setDiagnostics(side === "b" ? diagnostics : []);
      showCompareError(side ? `Spec ${side.toUpperCase()}: ${message}` : message);
      return;
    }
    editor.setDiagnostics([]);
    state.editorB.setDiagnostics([]);
    const result = await response.json();
    if (generation !== state.compareGeneration) return;
    $("compare-error").hidden = true;
    $("compare-table").classList.remove("stale");
    $("compare-table").textContent = result.table;
  }

  function showCompareError(message) {
    const box = $("compare-error");
    box.textContent = message;
    box.hidden = false;
    $("compare-table").classList.add("stale");
  }

  const scheduleCompare = debounce(runCompare, DEBOUNCE_MS);

  function toggleCompare() {
    state.compare = !state.compare;
    document.body.classList.toggle("comparing", state.compare);
    $("compare-toggle").setAttribute("aria-pressed", String(state.compare));
    $("editor-b-pane").hidden = !state.compare;
    $("compare-pane").hidden = !state.compare;
    $("results").hidden = state.compare;
    $("editor-a-title").textContent = state.compare ? "Spec A" : "Spec";
    if (state.compare && !state.editorB) {
      state.editorB = window.ConvcalcEditor.create($("editor-b"), {
        doc: editor.getDoc(),
        schema: state.schema,
        onChange: scheduleCompare,
        onDropFile: async (file) => state.editorB.setDoc(await file.text()),
      });
    }
    if (state.compare) runCompare();
    else scheduleAnalyze();
  }

  // ------------------------------------------------------------ start

  const scheduleAnalyze = debounce(analyze, DEBOUNCE_MS);

  const editor = window.ConvcalcEditor.create($("editor"), {
    doc: "",
    onChange: () => {
      updateFileLabel();
      if (state.compare) scheduleCompare();
      else scheduleAnalyze();
    },
    onSave: save,
    onDropFile: openFile,
  });
  window.convcalcPage = { editor, state }; // for the browser tests

  function wire() {
    $("examples").addEventListener("change", () => openExample($("examples"), editor));
    $("examples-b").addEventListener("change", () => openExample($("examples-b"), state.editorB));
    $("open-button").addEventListener("click", () => $("open-file").click());
    $("open-file").addEventListener("change", (event) => {
      openFile(event.target.files[0]);
      event.target.value = "";
    });
    $("save").addEventListener("click", save);
    $("download").addEventListener("change", (event) => {
      const format = event.target.value;
      event.target.value = "";
      if (format) exportAs(format);
    });
    $("share").addEventListener("click", share);
    $("share-close").addEventListener("click", () => ($("share-box").hidden = true));
    $("reload-file").addEventListener("click", reloadFromDisk);
    $("file-notice-close").addEventListener("click", () => ($("file-notice").hidden = true));
    $("compare-toggle").addEventListener("click", toggleCompare);
    $("compare-depth").addEventListener("input", scheduleCompare);
    // a file dropped anywhere on the editor pane (CodeMirror handles drops on the text)
    const pane = $("editor-pane");
    pane.addEventListener("dragover", (event) => event.preventDefault());
    pane.addEventListener("drop", (event) => {
      if (!event.dataTransfer.files.length) return;
      event.preventDefault();
      openFile(event.dataTransfer.files[0]);
    });
    document.addEventListener("keydown", (event) => {
      // in the editor, its own Mod-s binding has saved already (and prevented the default)
      if (event.defaultPrevented) return;
      if ((event.ctrlKey || event.metaKey) && event.key === "s") {
        event.preventDefault();
        save();
      }
    });
    window.addEventListener("hashchange", () => {
      const text = specFromFragment();
      if (text !== null) editor.setDoc(text);
    });
    window.addEventListener("beforeunload", (event) => {
      if (isDirty()) event.preventDefault();
    });
  }

  async function start() {
    wire();
    api("GET", "/api/schema")
      .then((response) => (response.ok ? response.json() : null))
      .then((schema) => {
        state.schema = schema;
        editor.setSchema(schema);
        if (state.editorB) state.editorB.setSchema(schema);
      })
      .catch(() => {});
    const [examples, served] = await Promise.all([loadExamples(), loadServedFile()]);
    if (served) {
      state.file = { path: served.path, mtime_ns: served.mtime_ns };
      state.savedText = served.text;
      $("save").hidden = false;
      $("file-path").hidden = false;
      setInterval(poll, POLL_MS);
    }
    // a share link wins over the served file, which wins over an example
    let text = specFromFragment();
    if (text === null && served) text = served.text;
    if (text === null && examples.length) {
      const first = examples.find((example) => example.name === "mnist_cnn") || examples[0];
      try {
        text = await fetchExample(first.name);
      } catch {
        text = null;
      }
    }
    editor.setDoc(text || "");
    updateFileLabel();
    editor.focus();
  }

  start();
})();
