// Bundle src/editor.js and CodeMirror into one minified script, convcalc/static/editor.js,
// which is committed so that installing or testing convcalc needs no npm.
import { build } from "esbuild";

await build({
  entryPoints: ["src/editor.js"],
  outfile: "../convcalc/static/editor.js",
  bundle: true,
  format: "iife",
  minify: true,
  target: ["es2020"],
  legalComments: "none",
  banner: {
    js:
      "/* convcalc playground editor, built from web/ by `npm ci && npm run build`. " +
      "Bundles CodeMirror 6 and Lezer (MIT, Marijn Haverbeke and others), " +
      "crelt, style-mod, w3c-keyname (MIT). */",
  },
  logLevel: "info",
});
