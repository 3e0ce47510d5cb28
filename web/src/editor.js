// The CodeMirror 6 editor of convcalc's playground page, bundled by build.mjs into
// convcalc/static/editor.js as window.ConvcalcEditor (the page itself is plain JS).
//
//   const editor = ConvcalcEditor.create(parent, {doc, schema, onChange, onSave, onDropFile})
//   editor.getDoc() / setDoc(text) / setDiagnostics([{line, message}]) / setSchema(schema)
//
// onChange(text, {external}) runs after every change; external is true for setDoc.
// Completion comes from convcalc's JSON Schema (GET /api/schema): top-level keys, layer
// type names, and the fields of the layer type being edited. Validation is the server's:
// its 422 errors come back through setDiagnostics.

import { basicSetup } from "codemirror";
import { EditorView, keymap, Decoration, WidgetType } from "@codemirror/view";
import { Annotation, EditorState, StateEffect, StateField } from "@codemirror/state";
import { yaml } from "@codemirror/lang-yaml";
import { setDiagnostics, lintGutter } from "@codemirror/lint";
import { autocompletion } from "@codemirror/autocomplete";
import { indentWithTab } from "@codemirror/commands";

const External = Annotation.define();

// ---------------------------------------------------------------- schema completion

// What completion needs from the schema: top-level keys, and per layer type its fields.
export function indexSchema(schema) {
  const index = { top: [], types: new Map() };
  if (!schema || typeof schema !== "object") return index;
  const defs = schema.$defs || {};
  index.top = fieldsOf(schema);
  const refs = ((defs.Layer && defs.Layer.anyOf) || []).map((item) => item.$ref).filter(Boolean);
  for (const ref of refs) {
    const model = defs[ref.split("/").pop()];
    const names = model && model.properties && model.properties.type && model.properties.type.enum;
    if (!names) continue;
    const entry = { title: model.title, description: model.description, fields: fieldsOf(model) };
    for (const name of names) index.types.set(name, entry);
  }
  return index;
}

function fieldsOf(model) {
  return Object.entries(model.properties || {})
    .filter(([name]) => name !== "type")
    .map(([name, property]) => ({
      label: name,
      type: "property",
      detail: describeType(property),
      info: property.description || undefined,
    }));
}

function describeType(property) {
  if (property.type) return [].concat(property.type).join(" | ");
  const members = property.anyOf || property.oneOf;
  if (!members) return property.$ref ? property.$ref.split("/").pop() : "";
  const kinds = new Set(members.map((member) => describeType(member)).filter(Boolean));
  kinds.delete("null");
  return [...kinds].join(" | ");
}

function typeOptions(index) {
  const options = [];
  for (const [name, entry] of index.types) {
    // the torch.nn spellings (Conv2d) rank below the lower-case names
    const torchSpelling = /[A-Z]/.test(name);
    options.push({
      label: name,
      type: "type",
      detail: entry.title,
      info: entry.description || undefined,
      boost: torchSpelling ? -1 : 0,
    });
  }
  return options;
}

// The layer type of the mapping the cursor is in: a flow mapping {type: conv2d, ...} on
// this line, else the block mapping whose keys sit at `column`.
function enclosingType(state, pos, column) {
  const line = state.doc.lineAt(pos);
  const before = line.text.slice(0, pos - line.from);
  const open = before.lastIndexOf("{");
  if (open >= 0 && before.lastIndexOf("}") < open) {
    const close = line.text.indexOf("}", open);
    const mapping = line.text.slice(open, close < 0 ? undefined : close);
    const match = /(?:^|[{,\s])type:\s*([\w-]+)/.exec(mapping);
    return match ? match[1] : null;
  }
  const keyAt = (text) => {
    const item = /^(\s*)-\s+/.exec(text);
    const indent = item ? item[0].length : /^\s*/.exec(text)[0].length;
    return { indent, content: text.slice(indent), isItem: !!item };
  };
  const typeOf = (text) => {
    const match = /^type:\s*([\w-]+)/.exec(text);
    return match ? match[1] : null;
  };
  // upwards to the list item that starts this mapping, then downwards to its end
  for (let n = line.number; n >= 1; n--) {
    const text = state.doc.line(n).text;
    if (!text.trim() || text.trim().startsWith("#")) continue;
    const key = keyAt(text);
    if (n !== line.number && key.indent < column) break;
    if (key.indent === column) {
      const found = typeOf(key.content);
      if (found) return found;
      if (key.isItem) break;
    }
  }
  for (let n = line.number + 1; n <= state.doc.lines; n++) {
    const text = state.doc.line(n).text;
    if (!text.trim() || text.trim().startsWith("#")) continue;
    const key = keyAt(text);
    if (key.indent < column || key.isItem) break;
    if (key.indent === column) {
      const found = typeOf(key.content);
      if (found) return found;
    }
  }
  return null;
}

function schemaCompletion(getIndex) {
  return (context) => {
    const index = getIndex();
    if (!index.types.size && !index.top.length) return null;
    const line = context.state.doc.lineAt(context.pos);
    const before = line.text.slice(0, context.pos - line.from);
    const word = context.matchBefore(/[\w-]*/);
    if (!context.explicit && word.from === word.to && !/(type:\s*|[{,]\s*|-\s+)$/.test(before)) {
      return null;
    }
    const result = (options) => ({ from: word.from, options, validFor: /^[\w-]*$/ });
    if (/\btype:\s*[\w-]*$/.test(before) || /^\s*-\s+[\w-]*$/.test(before)) {
      // a layer type, written as `type: name` or as a bare list item
      return result(typeOptions(index));
    }
    if (/[{,]\s*[\w-]*$/.test(before)) {
      const entry = index.types.get(enclosingType(context.state, context.pos, 0));
      return entry ? result(entry.fields) : result([{ label: "type", type: "property" }]);
    }
    const key = /^(\s*)(-\s+)?[\w-]*$/.exec(before);
    if (!key) return null;
    const column = key[1].length + (key[2] ? key[2].length : 0);
    if (column === 0) return result(index.top);
    const entry = index.types.get(enclosingType(context.state, context.pos, column));
    return entry ? result(entry.fields) : result([{ label: "type", type: "property" }]);
  };
}

// ---------------------------------------------------------------- error beside its line

class MessageWidget extends WidgetType {
  constructor(message) {
    super();
    this.message = message;
  }
  eq(other) {
    return other.message === this.message;
  }
  toDOM() {
    const span = document.createElement("span");
    span.className = "cc-inline-error";
    span.setAttribute("data-test", "inline-error");
    span.textContent = this.message;
    return span;
  }
}

const setMessages = StateEffect.define();
const messageField = StateField.define({
  create: () => Decoration.none,
  update(decorations, transaction) {
    decorations = decorations.map(transaction.changes);
    for (const effect of transaction.effects) {
      if (effect.is(setMessages)) decorations = effect.value;
    }
    return decorations;
  },
  provide: (field) => EditorView.decorations.from(field),
});

// ---------------------------------------------------------------- the editor

const theme = EditorView.theme({
  "&": { height: "100%", fontSize: "13px" },
  ".cm-scroller": { fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace" },
  ".cm-inline-error, .cc-inline-error": {
    marginLeft: "2em",
    padding: "0 6px",
    borderRadius: "3px",
    color: "#b00020",
    background: "#fdecee",
    fontFamily: "system-ui, sans-serif",
    fontSize: "12px",
  },
});

export function create(parent, options = {}) {
  let index = indexSchema(options.schema);
  const onChange = options.onChange || (() => {});
  const extensions = [
    basicSetup,
    yaml(),
    EditorView.lineWrapping,
    lintGutter(),
    autocompletion({ override: [schemaCompletion(() => index)] }),
    messageField,
    theme,
    EditorState.tabSize.of(2),
    keymap.of([
      indentWithTab,
      {
        key: "Mod-s",
        preventDefault: true,
        run: () => {
          if (options.onSave) options.onSave();
          return true;
        },
      },
    ]),
    EditorView.updateListener.of((update) => {
      if (!update.docChanged) return;
      const external = update.transactions.some((tr) => tr.annotation(External));
      onChange(update.state.doc.toString(), { external });
    }),
    EditorView.domEventHandlers({
      // a dropped file replaces the spec instead of being inserted at the drop point
      drop(event) {
        const files = event.dataTransfer && event.dataTransfer.files;
        if (!files || !files.length || !options.onDropFile) return false;
        event.preventDefault();
        options.onDropFile(files[0]);
        return true;
      },
    }),
  ];
  if (options.readOnly) extensions.push(EditorState.readOnly.of(true));
  const view = new EditorView({
    parent,
    state: EditorState.create({ doc: options.doc || "", extensions }),
  });

  const handle = {
    view,
    getDoc: () => view.state.doc.toString(),
    setDoc(text) {
      view.dispatch({
        changes: { from: 0, to: view.state.doc.length, insert: text },
        annotations: External.of(true),
      });
    },
    // [{line (1-based, or null for the whole spec), message}]; an empty list clears them
    setDiagnostics(list) {
      const doc = view.state.doc;
      const diagnostics = [];
      const byLine = new Map(); // one message beside each line, several joined
      for (const item of list || []) {
        const number = Math.min(Math.max(item.line || 1, 1), doc.lines);
        const line = doc.line(number);
        const indent = /^\s*/.exec(line.text)[0].length;
        const from = line.from + (indent < line.length ? indent : 0);
        diagnostics.push({ from, to: Math.max(line.to, from), severity: "error", message: item.message });
        byLine.set(line.to, [...(byLine.get(line.to) || []), item.message]);
      }
      const widgets = [...byLine]
        .sort((a, b) => a[0] - b[0])
        .map(([position, messages]) =>
          Decoration.widget({ widget: new MessageWidget(messages.join("; ")), side: 1 }).range(position),
        );
      view.dispatch(setDiagnostics(view.state, diagnostics));
      view.dispatch({ effects: setMessages.of(Decoration.set(widgets, true)) });
    },
    setSchema(schema) {
      index = indexSchema(schema);
    },
    focus: () => view.focus(),
    destroy: () => view.destroy(),
  };
  return handle;
}

if (typeof window !== "undefined") {
  window.ConvcalcEditor = { create, indexSchema };
}
