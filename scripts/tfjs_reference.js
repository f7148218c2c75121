// Run a TF.js graph model with TF.js itself (pure-JS CPU backend) on one input tensor:
// the reference that the ONNX conversion in pipeline/vision/tfjs_onnx.py is tested against.
//   node tfjs_reference.js MODEL_JSON INPUT.f32 D0,D1,... OUT_DIR
// Writes OUT_DIR/<output name>.f32 (little-endian float32) and OUT_DIR/shapes.json.
// Needs @tensorflow/tfjs-core, -converter and -backend-cpu (scripts/setup.sh installs them
// into $EDGEVEIL_CACHE/node; NODE_PATH points there).
"use strict";
const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const converter = require("@tensorflow/tfjs-converter");

async function main() {
  const [modelJson, inputFile, dims, outDir] = process.argv.slice(2);
  if (!outDir) {
    console.error("usage: node tfjs_reference.js MODEL_JSON INPUT.f32 D0,D1,... OUT_DIR");
    process.exit(2);
  }
  await tf.setBackend("cpu");
  const spec = JSON.parse(fs.readFileSync(modelJson, "utf8"));
  const shards = [];
  const weightSpecs = [];
  for (const group of spec.weightsManifest) {
    for (const p of group.paths) shards.push(fs.readFileSync(path.join(path.dirname(modelJson), p)));
    weightSpecs.push(...group.weights);
  }
  const buf = Buffer.concat(shards);
  const weightData = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  const model = await converter.loadGraphModel(tf.io.fromMemory({
    modelTopology: spec.modelTopology, weightSpecs, weightData,
    format: spec.format, generatedBy: spec.generatedBy, convertedBy: spec.convertedBy,
    signature: spec.signature,
  }));
  const raw = fs.readFileSync(inputFile);
  const data = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  const shape = dims.split(",").map(Number);
  const input = tf.tensor(data, shape, "float32");
  const names = model.outputs.map((o) => o.name);
  const outs = model.execute(input, names);
  const list = Array.isArray(outs) ? outs : [outs];
  const shapes = {};
  fs.mkdirSync(outDir, { recursive: true });
  for (let i = 0; i < list.length; i++) {
    const name = names[i].split(":")[0];
    const arr = await list[i].data();
    fs.writeFileSync(path.join(outDir, name + ".f32"), Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength));
    shapes[name] = list[i].shape;
  }
  fs.writeFileSync(path.join(outDir, "shapes.json"), JSON.stringify(shapes));
}

main().catch((err) => { console.error(err && err.stack ? err.stack : String(err)); process.exit(1); });
